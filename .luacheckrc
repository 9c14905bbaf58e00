-- luacheck configuration for pushauth's Redis scripts (scripts/lint-lua checks each script as Redis gets
-- it: its `--@include` lines replaced by the library files).
--
-- Redis runs scripts in Lua 5.1 with these globals of its own, all read-only (a script may not create a
-- global: Redis refuses it, and luacheck reports it):
--   redis      the command interface (redis.call, redis.pcall, redis.error_reply, redis.status_reply,
--              redis.sha1hex, redis.log, redis.setresp, redis.set_repl, redis.breakpoint, redis.debug, ...)
--   KEYS ARGV  the script's key names and arguments
--   cjson cmsgpack bit struct   the libraries Redis loads
std = "lua51"
read_globals = {"redis", "cjson", "cmsgpack", "bit", "struct", "KEYS", "ARGV"}
-- luacheck's default (120 characters); no script line is longer than that.
max_line_length = 120
