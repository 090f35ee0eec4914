"""The lowest wing: errors, BuildConfig and its layers, commands as data, credentials and the other
hostile-input rules, safe file and git operations, the cache, locks. Imports no other wing."""
