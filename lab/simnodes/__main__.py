"""``python -m virtproof.lab.simnodes --lab-dir DIR``: run the node agent until SIGTERM/SIGINT.

Exit codes: 0 after a clean stop (every guest stopped), 2 for a bad ``agent.json``, 3 when the
control plane, the identities or the qemu lab cannot be reached at start.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from virtproof.core.errors import EXIT_LAB, EXIT_OK, EXIT_USAGE
from virtproof.lab.simnodes.agent import Agent, Interrupted
from virtproof.lab.simnodes.config import ConfigError, load
from virtproof.lab.simnodes.guests import GuestError
from virtproof.lab.simnodes.identity import IdentityError
from virtproof.lab.simnodes.kube import ApiError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m virtproof.lab.simnodes", description=__doc__.splitlines()[0])
    parser.add_argument("--lab-dir", required=True, type=Path, help="the control-plane lab's directory (agent.json)")
    parser.add_argument("--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    try:
        cfg = load(args.lab_dir)
    except ConfigError as exc:
        print(f"simnodes: {exc}", file=sys.stderr)
        return EXIT_USAGE
    logging.basicConfig(
        filename=str(cfg.log_file), level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s.%(msecs)03d %(levelname)s %(threadName)s %(message)s", datefmt="%Y-%m-%dT%H:%M:%S",
    )
    for noisy in ("urllib3", "kubernetes", "qemu"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    agent = Agent(cfg)
    done = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        logging.getLogger("virtproof.lab.simnodes").info("signal %d", signum)
        agent.stopping.set()
        done.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    code = EXIT_OK
    try:
        agent.start()
        done.wait()
    except Interrupted:
        pass
    except (ApiError, IdentityError, GuestError, OSError) as exc:
        logging.getLogger("virtproof.lab.simnodes").error("agent could not start: %s", exc)
        print(f"simnodes: could not start: {exc}", file=sys.stderr)
        code = EXIT_LAB
    finally:
        agent.stop()
    return code


if __name__ == "__main__":
    sys.exit(main())
