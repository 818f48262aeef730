"""The HTTP surface: the application and its routes, security headers, proxies, page files."""
