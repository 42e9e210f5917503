"""gRPC shell of the store layer: the PathInfoService servicer (``pathinfo_servicer``)."""
