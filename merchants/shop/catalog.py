"""What the example shop sells. Prices are tenge as exact decimal strings, the form the gateway takes."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Product:
    id: str
    name: str
    price_kzt: str  # at most 2 decimals, e.g. "1500.00"; never a float


PRODUCTS: dict[str, Product] = {
    p.id: p
    for p in (
        Product("coffee", "Flat white, Alatau Coffee", "1500.00"),
        Product("baursak", "Baursak box (12)", "2500.00"),
        Product("tour", "Alatau city tour", "12500.00"),
        Product("felt", "Felt carpet, hand made", "75000.00"),  # above 50,000 KZT: waits for confirmations
    )
}
