import sys

from mixdistill.cli import main

sys.exit(main())
