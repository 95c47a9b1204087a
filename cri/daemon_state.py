"""What the servicers and managers share: the effective config, the state store, the
metrics and the probes of the node's programs and networks. SIGHUP swaps in a new
config here."""

from __future__ import annotations

from cri.config import Config
from cri.events import EventBus
from cri.images import ImageManager
from cri.metrics import Metrics
from cri.store import StateStore
from network.cni_config import CniConfigDir
from runtime.programs import ProgramProber


class DaemonState:
    def __init__(
        self, config: Config, store: StateStore, images: ImageManager, metrics: Metrics
    ) -> None:
        self.store = store
        self.images = images
        self.metrics = metrics
        self.programs = ProgramProber()
        self.events = EventBus()
        self.config = config
        self.cni = self._cni_for(config)

    @staticmethod
    def _cni_for(config: Config) -> CniConfigDir:
        net = config.network
        return CniConfigDir(net.cni_config_dir, net.cni_plugin_dirs, net.cni_default_network)

    def apply(self, config: Config) -> None:
        """Take a reloaded config: what can change at run time does, right away."""
        self.config = config
        self.cni = self._cni_for(config)
        self.images.reload(config)
