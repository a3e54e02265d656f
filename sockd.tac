# twistd -ny sockd.tac: the same service tree as `twistd sockd` with its defaults.
from twisted.application import service

from sockd.tap import Options, makeService

options = Options()
options.parseOptions([])
application = service.Application("sockd")
makeService(options).setServiceParent(application)
