import sys

from breed.cli import main

sys.exit(main())
