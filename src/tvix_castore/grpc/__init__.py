"""gRPC shells of the castore services: channels, the status table, and the two servicers.

``channel`` turns ``grpc+unix://`` / ``grpc+http(s)://`` URLs into channels (spec §9.3);
``status`` holds the one table between our error tree and gRPC status codes; the servicers
(``blob_servicer``, ``directory_servicer``) adapt any BlobService / DirectoryService to the wire.
"""
