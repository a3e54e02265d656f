/* A simple server in the internet domain using TCP
   The port number is passed as an argument
   This version runs forever, forking off a separate
   process for each connection

   The sockets tutorial's fork-per-connection server ("Enhancements to the
   server code" and "The zombie problem"), changed as little as a benchmark
   needs.  Every change is marked BENCH:
     1. dostuff() answers every read on the connection in a loop until EOF
        (the tutorial's answers one read and exits);
     2. zombies are reaped by the tutorial's SigCatcher, looping (one SIGCHLD
        can stand for several children) and saving errno;
     3. it binds 127.0.0.1, not INADDR_ANY, and accepts port 0, printing
        "ack listening on tcp 127.0.0.1:PORT" (stdout is flushed);
     4. an optional second argument sets the listen() backlog (the tutorial's
        5 stays the default);
     5. accept() failing with EINTR or ECONNABORTED is retried instead of
        ending the server; clilen is a socklen_t; prototypes fixed for C99.
   It still prints every message on stdout, as the tutorial's does.
*/
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>
#include <errno.h>
#include <signal.h>
#include <sys/types.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <netinet/in.h>
#include <arpa/inet.h>

void dostuff(int); /* function prototype */
void error(char *msg)
{
    perror(msg);
    exit(1);
}

/* BENCH 2: the tutorial's SigCatcher, looping. */
void SigCatcher(int n)
{
    int saved = errno;
    (void)n;
    while (wait3(NULL, WNOHANG, NULL) > 0)
        ;
    errno = saved;
}

int main(int argc, char *argv[])
{
     int sockfd, newsockfd, portno, pid;
     socklen_t clilen;                                   /* BENCH 5 */
     struct sockaddr_in serv_addr, cli_addr;
     int backlog = argc > 2 ? atoi(argv[2]) : 5;         /* BENCH 4 */

     if (argc < 2) {
         fprintf(stderr,"ERROR, no port provided\n");
         exit(1);
     }
     signal(SIGCHLD, SigCatcher);                        /* BENCH 2 */
     sockfd = socket(AF_INET, SOCK_STREAM, 0);
     if (sockfd < 0)
        error("ERROR opening socket");
     bzero((char *) &serv_addr, sizeof(serv_addr));
     portno = atoi(argv[1]);
     serv_addr.sin_family = AF_INET;
     serv_addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK); /* BENCH 3 */
     serv_addr.sin_port = htons(portno);
     if (bind(sockfd, (struct sockaddr *) &serv_addr,
              sizeof(serv_addr)) < 0)
              error("ERROR on binding");
     listen(sockfd,backlog);
     clilen = sizeof(serv_addr);                         /* BENCH 3 */
     getsockname(sockfd, (struct sockaddr *) &serv_addr, &clilen);
     printf("ack listening on tcp 127.0.0.1:%d\n", ntohs(serv_addr.sin_port));
     fflush(stdout);
     clilen = sizeof(cli_addr);
     while (1) {
         newsockfd = accept(sockfd,
               (struct sockaddr *) &cli_addr, &clilen);
         if (newsockfd < 0) {
             if (errno == EINTR || errno == ECONNABORTED) /* BENCH 5 */
                 continue;
             error("ERROR on accept");
         }
         pid = fork();
         if (pid < 0)
             error("ERROR on fork");
         if (pid == 0)  {
             close(sockfd);
             dostuff(newsockfd);
             exit(0);
         }
         else close(newsockfd);
     } /* end of while */
     return 0; /* we never get here */
}

/******** DOSTUFF() *********************
 There is a separate instance of this function
 for each connection.  It handles all communication
 once a connnection has been established.
 *****************************************/
void dostuff (int sock)
{
   int n;
   char buffer[256];

   while (1) {                                           /* BENCH 1 */
      bzero(buffer,256);
      n = read(sock,buffer,255);
      if (n < 0) error("ERROR reading from socket");
      if (n == 0) return;                                /* BENCH 1: EOF ends the conversation */
      printf("Here is the message: %s\n",buffer);
      n = write(sock,"I got your message",18);
      if (n < 0) error("ERROR writing to socket");
   }
}
