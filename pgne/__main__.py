"""`python -m pgne` is the same as the `pgne` command."""
import sys

from pgne.cli import main

sys.exit(main())
