"""HTTP layer: pages, JSON API, staff authentication."""
