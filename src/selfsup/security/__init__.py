"""Security audits for SSL: backdoor poisoning (Noisy Alignment, SSL-Backdoor, CTRL), a PatchSearch-style
detector, AdvEncoder-style universal perturbations, and Unlearnable Clusters. See ``selfsup audit --help``.

Submodules are imported lazily by their users; this package only names them.
"""

__all__ = ["adversarial", "audit", "defense", "metrics", "poison", "triggers", "unlearnable"]
