"""Wall time of `make test` and `make figures` (the install is done first and not counted)."""
import subprocess
import time


def timed(cmd):
    t0 = time.perf_counter()
    subprocess.run(cmd, shell=True, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


if __name__ == "__main__":
    timed("make install")
    for target in ("test", "figures"):
        print(f"make {target}: {timed(f'make {target}'):.0f} s")
