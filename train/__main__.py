"""python -m p2phd_infer.train ... : the same as `p2phd-infer train ...`."""
from .cli import train_cmd

if __name__ == "__main__":
    train_cmd(prog_name="python -m p2phd_infer.train")
