"""Configuration: typed dataclasses (schema) and presets. The one place a run's configuration is built is
:func:`selfsup.config.build.build_config` (import it from there: it sits above the methods and models)."""

from selfsup.config.schema import (
    BackboneConfig,
    DataConfig,
    OptimConfig,
    PretrainConfig,
    TrainConfig,
    apply_overrides,
    asdict,
    dump_yaml,
    from_dict,
    load_yaml,
    parse_set,
    to_dict,
)

__all__ = [
    "DataConfig", "BackboneConfig", "OptimConfig", "TrainConfig", "PretrainConfig", "apply_overrides",
    "parse_set", "load_yaml", "dump_yaml", "to_dict", "from_dict", "asdict",
]
