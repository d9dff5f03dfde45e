"""The tiny-model factory moved to :mod:`pipelines.testing` (benchmarks use it too); new code imports it from there.

``tests.tiny_models`` stays as another name for that very module (not a copy), so the tests' imports, private helpers
and monkeypatches keep working.
"""

import sys

from pipelines import testing

sys.modules[__name__] = testing
