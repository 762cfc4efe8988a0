"""The server (app/): its HTTP API in and out of process, errors, crashes, state on restart."""
