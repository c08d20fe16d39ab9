"""python -m p2phd_infer.train ... : the same as `p2phd-infer train ...` (torchrun launches it).
An entry point, like the console script: the one module of train/ that imports the CLI."""
from p2phd_infer.cli.train import train_cmd

if __name__ == "__main__":
    train_cmd(prog_name="python -m p2phd_infer.train")
