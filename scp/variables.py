"""The registry of every ``SCP2FHIR_*`` variable: name -> (default shown to operators,
description), collected from the settings classes that parse them, so it cannot drift
from what is parsed. :mod:`scp.config` refuses variables and file keys not in it, the
README's configuration table is checked against it, ``scp2fhir --help`` lists it.
"""

from __future__ import annotations

from scp.pacs.settings import PacsSettings
from scp.settings import ScpSettings
from scp.shared_settings import SharedSettings
from scp.typed_settings import registry
from scp.up.settings import UpSettings
from workers.delivery_environment import ENVIRONMENT_VARIABLES as DELIVERY_VARIABLES
from workers.settings import WorkerSettings

#: The variable naming the configuration file (also ``--config``); read by :mod:`scp.config`.
CONFIG_VARIABLES: dict[str, tuple[str, str]] = {
    "SCP2FHIR_CONFIG": (
        "(unset)",
        "TOML configuration file (also `--config`): any variable below by its name without "
        "SCP2FHIR_ in lower case, plus [[destinations]]. The environment wins over the file.",
    ),
}

#: Every settings class parsed by :func:`scp.typed_settings.from_env`.
SETTINGS_CLASSES: tuple[type, ...] = (
    SharedSettings,
    ScpSettings,
    WorkerSettings,
    UpSettings,
    PacsSettings,
)

VARIABLES: dict[str, tuple[str, str]] = {
    **CONFIG_VARIABLES,
    **registry(*SETTINGS_CLASSES),
    **DELIVERY_VARIABLES,
}
