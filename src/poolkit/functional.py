"""The functional twin of every pooling method, one function per registered name.

Each takes ``nn.MaxPool2d``'s arguments plus the method's options; learnable methods take their
parameters as tensors (``theta``, ``threshold``, ``weight``...), so a module's forward equals its
twin called with the module's parameters (``module.functional_kwargs()``).

| registry name      | function                    |
| ------------------ | --------------------------- |
| max                | max_pool2d                  |
| avg                | avg_pool2d                  |
| lp                 | lp_pool2d                   |
| strided_conv       | strided_conv_pool2d         |
| tmaxavg            | t_max_avg_pool2d            |
| soft_tmaxavg       | soft_t_max_avg_pool2d       |
| learnable_t        | learnable_t_pool2d          |
| channel_adaptive   | channel_adaptive_pool2d     |
| gated              | gated_pool2d                |
| attention          | attention_pool2d            |
| stochastic_mix     | stochastic_mix_pool2d       |
| mixed              | mixed_pool2d                |
| stochastic         | stochastic_pool2d           |
| softpool           | soft_pool2d                 |
| lip                | lip_pool2d                  |
| gem                | gem_pool2d                  |
| blurmax            | blur_max_pool2d             |
"""

from poolkit.layers.attention import attention_pool2d, lip_pool2d, soft_pool2d
from poolkit.layers.blend import channel_adaptive_pool2d, gated_pool2d, mixed_pool2d, stochastic_mix_pool2d
from poolkit.layers.classic import avg_pool2d, lp_pool2d, max_pool2d, strided_conv_pool2d
from poolkit.layers.literature import blur_max_pool2d, gem_pool2d, stochastic_pool2d
from poolkit.layers.threshold import learnable_t_pool2d, soft_t_max_avg_pool2d, t_max_avg_pool2d

__all__ = [
    "attention_pool2d",
    "avg_pool2d",
    "blur_max_pool2d",
    "channel_adaptive_pool2d",
    "gated_pool2d",
    "gem_pool2d",
    "learnable_t_pool2d",
    "lip_pool2d",
    "lp_pool2d",
    "max_pool2d",
    "mixed_pool2d",
    "soft_pool2d",
    "soft_t_max_avg_pool2d",
    "stochastic_mix_pool2d",
    "stochastic_pool2d",
    "strided_conv_pool2d",
    "t_max_avg_pool2d",
]
