/* unix_client.c: the tutorial's stream client in the Unix domain (U_client).
 *
 * The tutorial says the only difference from client.c is the form of the address:
 * a struct sockaddr_un whose sun_path names the socket file, given as argv[1],
 * instead of a host name and port.  Everything else is client.c as given (with the
 * same compile fixes: headers, "\n", the (struct sockaddr *) cast).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>
#include <sys/types.h>
#include <sys/socket.h>
#include <sys/un.h>

void error(char *msg)
{
    perror(msg);
    exit(0);
}

int main(int argc, char *argv[])
{
    int sockfd, servlen, n;
    struct sockaddr_un serv_addr;

    char buffer[256];
    if (argc < 2)
    {
        fprintf(stderr, "usage %s socketpath\n", argv[0]);
        exit(0);
    }
    bzero((char *) &serv_addr, sizeof(serv_addr));
    serv_addr.sun_family = AF_UNIX;
    strncpy(serv_addr.sun_path, argv[1], sizeof(serv_addr.sun_path) - 1);
    servlen = strlen(serv_addr.sun_path) + sizeof(serv_addr.sun_family);
    sockfd = socket(AF_UNIX, SOCK_STREAM, 0);
    if (sockfd < 0)
        error("ERROR opening socket");
    if (connect(sockfd, (struct sockaddr *) &serv_addr, servlen) < 0)
        error("ERROR connecting");
    printf("Please enter the message: ");
    bzero(buffer, 256);
    fgets(buffer, 255, stdin);
    n = write(sockfd, buffer, strlen(buffer));
    if (n < 0)
        error("ERROR writing to socket");
    bzero(buffer, 256);
    n = read(sockfd, buffer, 255);
    if (n < 0)
        error("ERROR reading from socket");
    printf("%s\n", buffer);
    return 0;
}
