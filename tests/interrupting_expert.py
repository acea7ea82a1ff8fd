"""A plug-in expert for the interrupt test: tanh(eta^T x), which sends its own process SIGINT
(as Ctrl-C would) when it is evaluated on INTERRUPT_AT_N samples, so the sweep is interrupted at a
known sample size instead of at whatever point a timer finds it."""

import os
import signal

from softmoe_torch.model.experts import TanhExpert


class InterruptingTanhExpert(TanhExpert):
    def forward(self, x):
        if x.shape[-2] == int(os.environ.get("INTERRUPT_AT_N", "-1")):
            os.kill(os.getpid(), signal.SIGINT)
        return super().forward(x)
