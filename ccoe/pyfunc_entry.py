"""MLflow models-from-code entry point of the CCoE pyfunc (no pickled Python object in the artifact).

MLflow executes this file when it loads a registered CCoE model version; it hands MLflow the
`ccoe.registry.CCoEPyfunc` model. Everything MLflow-specific lives in `ccoe.registry`.
"""

from ccoe.registry import set_pyfunc_model

set_pyfunc_model()
