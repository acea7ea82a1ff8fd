"""The study of a setting over sample sizes: simulate, fit (through ``softmoe_torch.estimation``),
measure, sweep resumably in worker processes, report and monitor."""
