"""`python -m tinytitan.config [RUN OPTIONS] [--section.key=value ...]`: check a job's config without
running it, and without importing torch, so that a launcher can do it first, in well under a second.

The run options say where the job will run, for the rank-dependent checks (`check_runtime`):
  --world-size=N          processes in the whole job (NGPU x NNODES)
  --processes-per-node=N  processes on each node (NGPU)
  --cuda-devices=N        CUDA devices a node has (0 without any)
Without them only the config itself is checked. run_train.sh passes all three.
"""

from tinytitan.config.checks import check_runtime
from tinytitan.config.parser import help_text, load_config, wants_help
from tinytitan.config.schema import ConfigError
from tinytitan.errors import run_entry_point

RUN_OPTIONS = ("--world-size", "--processes-per-node", "--cuda-devices")


def split_run_options(argv: list[str]) -> tuple[dict[str, int], list[str]]:
    """The leading run options (`--name=N` or `--name N`) as {name: N}, and the config arguments after them."""
    options, rest = {}, list(argv)
    while rest and rest[0].split("=", 1)[0] in RUN_OPTIONS:
        name, _, text = rest.pop(0).partition("=")
        if not text and rest:
            text = rest.pop(0)
        if not text.isdigit():
            raise ConfigError(f"{name} = {text!r}: expected a whole number")
        options[name] = int(text)
    return options, rest


def main(argv: list[str]) -> int:
    if wants_help(argv):
        print(__doc__.strip() + "\n\n" + help_text())
        return 0
    options, argv = split_run_options(argv)
    config = load_config(argv)
    if options:
        missing = [name for name in RUN_OPTIONS if name not in options]
        if missing:
            raise ConfigError(f"run options: {', '.join(missing)} missing: expected all of {', '.join(RUN_OPTIONS)}")
        world_size, per_node, cuda_devices = (options[name] for name in RUN_OPTIONS)
        if world_size < 1 or not 1 <= per_node <= world_size:
            raise ConfigError(
                f"--world-size={world_size}, --processes-per-node={per_node}: expected 1 <= processes per node "
                "<= world size"
            )
        check_runtime(config, world_size, per_node, cuda_devices)
    return 0


if __name__ == "__main__":
    run_entry_point(main)
