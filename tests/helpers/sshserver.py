"""A one-user SSH server for tests (asyncssh): runs each session's command with `sh -c`.

    python -W ignore sshserver.py PORT HOST_KEY AUTHORIZED_KEYS

Listens on 127.0.0.1:PORT (run it in a namespace the test made), prints "ready", and for
each exec request runs the command with its stdin/stdout/stderr on the channel, bytes as
they are, as OpenSSH's sshd does without a pty: when the client closes the channel, the
command's stdout is closed (its next write fails with EPIPE), nothing is signalled.
SIGTERM stops the server.
"""

import asyncio
import signal
import sys

import asyncssh


async def handle(process):
    proc = await asyncio.create_subprocess_shell(
        process.command or "true",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    await process.redirect(stdin=proc.stdin, stdout=proc.stdout, stderr=proc.stderr)
    exited = asyncio.ensure_future(proc.wait())
    closed = asyncio.ensure_future(process.wait_closed())
    await asyncio.wait([exited, closed], return_when=asyncio.FIRST_COMPLETED)
    if exited.done():
        process.exit(exited.result())
        return
    # the channel is gone: close our ends of the command's pipes, as sshd does
    for fd in (0, 1, 2):
        pipe = proc._transport.get_pipe_transport(fd)
        if pipe is not None:
            pipe.close()
    await exited


class Server(asyncssh.SSHServer):
    def begin_auth(self, username):
        return True


async def main(port, host_key, authorized):
    server = await asyncssh.create_server(
        Server,
        "127.0.0.1",
        port,
        server_host_keys=[host_key],
        authorized_client_keys=authorized,
        process_factory=handle,
        encoding=None,
    )
    print("ready", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    await stop.wait()
    server.close()
    await server.wait_closed()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), sys.argv[2], sys.argv[3]))
