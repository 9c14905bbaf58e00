import sys

from pushauth.cli import main

sys.exit(main())
