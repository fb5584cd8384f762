"""Ranks of a coscheduled job meet with no rendezvous code of their own, as torch.distributed
(``init_method="env://"``) or ``jax.distributed.initialize()`` would: Iris gives every task
MASTER_ADDR, MASTER_PORT, RANK and WORLD_SIZE (and JAX_COORDINATOR_ADDRESS ...).

    iris job run --coscheduled --replicas 4 -- python examples/rendezvous.py

Rank 0 listens on MASTER_PORT; every other rank connects and says hello; rank 0 answers each
with the whole world once everyone has arrived. Pure Python, so it runs anywhere.
"""

import os
import socket
import time

rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
host, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
if rank == 0:
    server = socket.create_server((os.environ.get("IRIS_BIND_HOST", "0.0.0.0"), port))
    peers = []
    while len(peers) < world - 1:
        conn, _ = server.accept()
        peers.append((conn, conn.recv(64).decode()))
    names = ",".join(["0"] + sorted((name for _, name in peers), key=int))
    for conn, _ in peers:
        conn.sendall(f"world={names}".encode())
        conn.close()
    print(f"rank 0 of {world}: everyone arrived ({names})", flush=True)
else:
    deadline = time.monotonic() + 60
    while True:
        try:
            conn = socket.create_connection((host, port), timeout=5)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    conn.sendall(str(rank).encode())
    print(f"rank {rank} of {world}: {conn.recv(64).decode()}", flush=True)
