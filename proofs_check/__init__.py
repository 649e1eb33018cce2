"""proofs_check: which of the paper's claims about its synthetic model hold, under which formalisation.

Run ``python -m proofs_check --help``. Derivations: proofs_check/README.md.
"""

from .claims import check_claim2, check_formalisation, formalisations
from .verdicts import ClaimResult, Verdict

__all__ = ["check_claim2", "check_formalisation", "formalisations", "ClaimResult", "Verdict"]
