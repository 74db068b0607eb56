"""A stand-in for one node of a multi-node launcher (torchrun --nnodes N --node-rank R).

    python -m tests.helpers.node_launch --ranks 2,3 --world 4 --port P -- CMD...

starts CMD once per listed global rank with RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR
and MASTER_PORT set as torchrun would, and TORCHELASTIC_RUN_ID when --elastic-id is
given; exits with the first non-zero exit code.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ranks", required=True)
    parser.add_argument("--world", type=int, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--elastic-id", default=None)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    processes = []
    for local, rank in enumerate(int(r) for r in args.ranks.split(",")):
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE=str(args.world), LOCAL_RANK=str(local),
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(args.port), OMP_NUM_THREADS="1")
        if args.elastic_id:
            env["TORCHELASTIC_RUN_ID"] = args.elastic_id
        processes.append(subprocess.Popen(command, env=env))
    codes = [process.wait() for process in processes]
    return next((code for code in codes if code), 0)


if __name__ == "__main__":
    sys.exit(main())
