"""Plain model code, free of Serve: runners on one base class (``models.base``), one task →
family table (``models.families``), device/precision/version (``models.loading``) and the local
random-weight profiles (``models.tiny``). Serve deployments and Ray Data actors load the same
runners."""
