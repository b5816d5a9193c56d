"""`python -m bench.tools.launch run -m bench ARGS...` (a job, through the server when there is one);
`python -m bench.tools.launch serve SOCKET` (the server; Snakefile starts it with --config forkserver=true)."""

import sys

from bench.tools.launch import client, serve

if len(sys.argv) >= 2 and sys.argv[1] == "run":
    client(sys.argv[2:])
elif len(sys.argv) == 3 and sys.argv[1] == "serve":
    serve(sys.argv[2])
else:
    sys.exit("usage: python -m bench.tools.launch run -m MODULE ARGS... | python -m bench.tools.launch serve SOCKET")
