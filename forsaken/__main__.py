"""`python -m forsaken` runs the same CLI as the `forsaken` console script."""

import sys

from forsaken.cli.main import main

sys.exit(main())
