"""Privacy, measured: what an honest-but-curious server holding the public backbone can recover from the taps a
job sends (server-side tooling; the device's defence lives in :mod:`mobillm.device.noise`)."""

from mobillm.privacy.audit import AuditConfig, reconstruction_scores, run_audit

__all__ = ["AuditConfig", "reconstruction_scores", "run_audit"]
