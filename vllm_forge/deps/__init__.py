"""The checkout's CMake git dependencies: fetched into the cache, imported from tarballs and bundles."""
