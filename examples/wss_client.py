"""A client of a ``wss://`` CSE whose certificate is self-signed: a ``tls:`` client endpoint
whose ``trustRoots`` is a directory of the certificates to trust (here ``trust/``, holding
the CSE's ``cert.pem``). See the how-to "wss:// with a self-signed certificate".

From the directory that holds ``trust/``: ``python examples/wss_client.py`` (or give the
port: ``python examples/wss_client.py 8443``).
"""

import sys

from twisted.internet import defer, task

from acmews.client import connect

PORT = int(sys.argv[1]) if len(sys.argv) > 1 else 8443


async def main(reactor):
    # trustRoots: a directory of the certificates to trust (here the self-signed one)
    admin = await connect(
        f"wss://localhost:{PORT}",
        originator="CAdmin",
        endpoint=f"tls:localhost:{PORT}:trustRoots=trust",
    ).addTimeout(5, reactor)
    r = await admin.retrieve("cse-in")
    print(r.rsc, r.pc["m2m:cb"]["poa"])  # 2000 ['wss://127.0.0.1:8443']
    await admin.close()


task.react(lambda reactor: defer.ensureDeferred(main(reactor)))
