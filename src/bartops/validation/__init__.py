"""Validation of incoming impression logs with Great Expectations (suites in ``expectations/``).

``validate_batch`` runs the suites on a batch; ``ingest`` accepts it into the training data or
quarantines it.  Great Expectations is imported lazily (it costs seconds), so importing this
package is cheap.
"""

from bartops.validation.core import ValidationSetupError, ingest, validate_batch
from bartops.validation.reader import BatchReadError, read_batch
from bartops.validation.report import ExpectationOutcome, ValidationReport

__all__ = ["validate_batch", "ingest", "ValidationReport", "ExpectationOutcome", "BatchReadError",
           "ValidationSetupError", "read_batch"]
