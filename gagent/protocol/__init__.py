"""Pure wire code: no sockets, no gevent. Bytes in, values out."""
