"""``python -m rawchat`` does what the ``rawchat`` command does."""

from rawchat.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
