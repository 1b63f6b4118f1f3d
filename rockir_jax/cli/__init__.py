"""The command lines: thin argparse front ends over the library, registered as ``rockir-*`` scripts."""
