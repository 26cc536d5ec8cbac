#!/bin/sh
# Entrypoint of the mnist-serve image.
#
#   serve [OPTIONS]   python -m service OPTIONS: the HTTP API (the default command); options
#                     override the MNIST_* environment (see `serve --help`)
#   train [OPTIONS]   python -m training.run OPTIONS: train and write /app/weights/<name>.pt
#   -...              options alone are options of `serve`, e.g. `docker run IMAGE --workers 2`
#   anything else     runs as given, e.g. `docker run -it IMAGE python`
#
# `exec` hands this shell's process over to Python, so SIGTERM from `docker stop` reaches
# uvicorn directly, which stops accepting connections and finishes the requests in flight.
set -eu

# The image's /app (this script's parent folder outside the image: the repository).
app_dir=$(CDPATH='' cd -- "$(dirname -- "$0")/.." && pwd)

# Training writes weights only at its end: find an unwritable output folder (a host folder
# bind-mounted for another uid) before it starts, not after.
require_writable() {
    if [ -w "$1" ] || { [ ! -e "$1" ] && [ -w "$(dirname -- "$1")" ]; }; then
        return 0
    fi
    echo "error: $1 is not writable by uid $(id -u) gid $(id -g)." >&2
    echo "With docker compose, set MNIST_UID=\$(id -u) and MNIST_GID=\$(id -g) (e.g. in .env)" \
        "to the owner of the host folder mounted there, or make that folder writable." >&2
    exit 1
}

command="${1:-serve}"
if [ "$#" -gt 0 ]; then
    shift
fi

case "$command" in
    serve)
        exec python -m service "$@"
        ;;
    train)
        case " $* " in
            *" -h "* | *" --help "*) ;;
            *)
                case " $* " in
                    *" --out"*) ;;
                    *) require_writable "$app_dir/weights" ;;
                esac
                case " $* " in
                    *" --run-dir"* | *" --resume"*) ;;
                    *) require_writable "$app_dir/runs" ;;
                esac
                ;;
        esac
        exec python -m training.run "$@"
        ;;
    -*)
        exec python -m service "$command" "$@"
        ;;
    *)
        exec "$command" "$@"
        ;;
esac
