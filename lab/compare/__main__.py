import sys

from forsaken.lab.compare.run import main

sys.exit(main())
