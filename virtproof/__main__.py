import sys

from virtproof.cli import main

sys.exit(main())
