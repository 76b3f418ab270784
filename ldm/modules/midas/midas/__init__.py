"""The MiDaS networks and transforms (original module names: ``dpt_depth``, ``midas_net``,
``midas_net_custom``, ``blocks``, ``vit``, ``transforms``, ``base_model``); their backbones live
in :mod:`ldm.modules.midas.midas.backbones`."""
