import sys

from agentaskit_dr._entry import main

sys.exit(main())
