import sys

from forsaken.compare.run import main

sys.exit(main())
