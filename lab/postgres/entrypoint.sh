#!/bin/sh
# Makes the cluster on first start (an empty data directory), then runs
# the server in the foreground as postgres. Trust authentication: the
# lab's network is the lab's own.
set -eu
bin=/usr/lib/postgresql/15/bin
mkdir -p "$PGDATA"
chown postgres:postgres "$PGDATA"
chmod 0700 "$PGDATA"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    runuser -u postgres -- "$bin/initdb" -D "$PGDATA" --auth=trust --username=postgres --encoding=UTF8 >/dev/null
    echo "listen_addresses = '*'" >> "$PGDATA/postgresql.conf"
    echo "host all all 0.0.0.0/0 trust" >> "$PGDATA/pg_hba.conf"
fi
exec runuser -u postgres -- "$bin/postgres" -D "$PGDATA"
