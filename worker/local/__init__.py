"""The local stack: the emulator, Azurite, the site's watcher/monitor and N agents on one machine."""
