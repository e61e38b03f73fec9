"""Security audits for SSL: backdoor poisoning (Noisy Alignment, SSL-Backdoor, CTRL) with a count of the
training pairs in which each attack's mechanism occurred, PatchSearch and DECREE defenses, AdvEncoder-style
universal perturbations, and Unlearnable Clusters. See ``selfsup audit --help``.

Submodules are imported lazily by their users; this package only names them.
"""

__all__ = ["adversarial", "audit", "decree", "defense", "mechanism", "metrics", "poison", "triggers", "unlearnable"]
