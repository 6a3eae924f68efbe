"""``python -m phi3v_train`` and ``torchrun -m phi3v_train``: the ``phi3v-train`` CLI."""

from phi3v_train.cli import main

if __name__ == "__main__":
    main(prog_name="phi3v-train")
