"""Checking a JSON file: its JSON Schema, then the rules between records that a schema cannot express.

The schema (draft 2020-12, from ``data_schema/``) is checked with jsonschema, split for speed: the big arrays'
records go through a quick yes/no check of their flat item schema first, and only the records that fail it (or
every record, when the item schema is too rich for the quick check) through jsonschema for its messages, so the
findings are those of validating the whole document with jsonschema. Then: ids unique in every list, and in a
competition dataset every image's ``license``, every annotation's ``image_id`` and ``category_id`` the id of an
entry, and every train/val image annotated (docs/formats.md §2.1).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable
from functools import cache
from typing import Any

import jsonschema

from inatcomp.formats.kinds import FileKind, _Found, _short, load_schema

__all__ = []  # nothing public: validate_file (inatcomp.formats.validate) is the entry point


def _json_path(parts: Iterable[Any]) -> str:
    out = "$"
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if re.fullmatch(r"\w+", part) else f"[{part!r}]")
    return out


def _validate_json(data: Any, kind: FileKind, max_problems: int) -> _Found:
    found = _Found(max_problems)
    shallow, items = _json_plan(kind)
    for error in shallow.iter_errors(data):
        found.add(_json_path(error.absolute_path), _error_message(error, kind))
    for key, (check, validator) in items.items():
        records = data if key is None else (data.get(key) if isinstance(data, dict) else None)
        if not isinstance(records, list):
            continue
        prefix = "$" if key is None else f"$.{key}"
        for index, record in enumerate(records):
            if check is not None and check(record):
                continue
            for error in validator.iter_errors(record):
                found.add(f"{prefix}[{index}]{_json_path(error.absolute_path)[1:]}", _error_message(error, kind))
    if kind in (FileKind.LOCATIONS, FileKind.CATEGORIES):
        if isinstance(data, list):
            _check_unique_ids(data, "$", found)
    elif isinstance(data, dict):
        _check_dataset_links(data, kind, found)
    return found


def _error_message(error: Any, kind: FileKind) -> str:
    if error.validator == "not" and kind.is_test:
        return "a test file must not have an 'annotations' key (that is the train/val flavour)"
    if error.validator == "anyOf" and kind is FileKind.LOCATIONS:
        return "record has neither 'date' nor 'date_c'; expected one of them"
    if error.validator == "type":
        return f"{_short(error.instance)} is not of type {error.validator_value!r}"
    if error.validator == "required":
        return f"{error.message.split(' is a required')[0]} is a required property, missing here"
    return error.message


@cache
def _json_plan(kind: FileKind) -> tuple[Any, dict[str | None, tuple[Callable[[Any], bool] | None, Any]]]:
    """Split a schema for speed: a validator without the big arrays' ``items``, and per array a fast yes/no check.

    Records failing the fast check (or every record, when the item schema is too rich for it) go through
    jsonschema for the messages, so results are the same as validating the whole document with jsonschema.
    """
    schema = load_schema(kind)
    jsonschema.Draft202012Validator.check_schema(schema)
    defs = schema.get("$defs", {})
    arrays: dict[str | None, dict] = {}
    if schema.get("type") == "array" and "items" in schema:
        arrays[None] = schema
    for key, sub in schema.get("properties", {}).items():
        if isinstance(sub, dict) and sub.get("type") == "array" and "items" in sub:
            arrays[key] = sub
    items = {}
    for key, holder in arrays.items():
        item_schema = holder.pop("items")
        ref = item_schema.get("$ref", "")
        if ref.startswith("#/$defs/"):
            item_schema = defs[ref.removeprefix("#/$defs/")]
        items[key] = (_fast_checker(item_schema), jsonschema.Draft202012Validator(item_schema))
    return jsonschema.Draft202012Validator(schema), items


_FAST_OBJECT_KEYWORDS = {"type", "required", "properties", "additionalProperties", "description", "anyOf"}
_FAST_VALUE_KEYWORDS = {"type", "minimum", "maximum", "minLength", "description"}


def _fast_checker(schema: dict) -> Callable[[Any], bool] | None:
    """A quick yes/no check of a flat object schema, or None when the schema uses anything else."""
    if schema.get("type") != "object" or not set(schema) <= _FAST_OBJECT_KEYWORDS:
        return None
    if schema.get("additionalProperties", True) is not True:
        return None
    alternatives = [alt.get("required", []) for alt in schema.get("anyOf", [])]
    if any(set(alt) != {"required"} for alt in schema.get("anyOf", [])):
        return None
    props = []
    for name, sub in schema.get("properties", {}).items():
        if not set(sub) <= _FAST_VALUE_KEYWORDS:
            return None
        types = sub.get("type", [])
        types = frozenset([types] if isinstance(types, str) else types)
        props.append((name, types, sub.get("minimum"), sub.get("maximum"), sub.get("minLength")))
    required = list(schema.get("required", []))

    def check(record: Any) -> bool:
        if type(record) is not dict:
            return False
        if any(key not in record for key in required):
            return False
        if alternatives and not any(all(key in record for key in alt) for alt in alternatives):
            return False
        for name, types, low, high, min_length in props:
            if name not in record:
                continue
            value = record[name]
            if types and not _type_ok(value, types):
                return False
            if isinstance(value, int | float) and not isinstance(value, bool):
                if (low is not None and value < low) or (high is not None and value > high):
                    return False
            elif min_length is not None and isinstance(value, str) and len(value) < min_length:
                return False
        return True

    return check


def _type_ok(value: Any, types: frozenset[str]) -> bool:
    """JSON Schema ``type`` semantics (an integral float counts as an integer; a bool is not a number)."""
    if value is None:
        return "null" in types
    if isinstance(value, bool):
        return "boolean" in types
    if isinstance(value, int):
        return "integer" in types or "number" in types
    if isinstance(value, float):
        return "number" in types or ("integer" in types and value.is_integer())
    if isinstance(value, str):
        return "string" in types
    if isinstance(value, dict):
        return "object" in types
    if isinstance(value, list):
        return "array" in types
    return False


def _int_id(record: Any, key: str = "id") -> int | None:
    if isinstance(record, dict):
        value = record.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def _check_unique_ids(records: list, where: str, found: _Found) -> set[int]:
    first: dict[int, int] = {}
    for index, record in enumerate(records):
        value = _int_id(record)
        if value is None:
            continue
        if value in first:
            found.add(f"{where}[{index}].id", f"duplicate id {value} (first used at {where}[{first[value]}])")
        else:
            first[value] = index
    return set(first)


_DATASET_LISTS = ("images", "categories", "annotations", "licenses")


def _check_dataset_links(data: dict, kind: FileKind, found: _Found) -> None:
    lists = {key: data.get(key) if isinstance(data.get(key), list) else None for key in _DATASET_LISTS}
    ids = {key: _check_unique_ids(records, f"$.{key}", found) for key, records in lists.items() if records is not None}
    images, licenses = lists["images"], ids.get("licenses")
    if images is not None and licenses is not None:
        for index, image in enumerate(images):
            license_id = _int_id(image, "license")
            if license_id is not None and license_id not in licenses:
                found.add(f"$.images[{index}].license", f"license {license_id} is not the id of any entry in licenses")
    annotations = lists["annotations"]
    if annotations is None:
        return
    categories = ids.get("categories")
    image_ids = ids.get("images")
    annotated: Counter[int] = Counter()
    for index, annotation in enumerate(annotations):
        image_id = _int_id(annotation, "image_id")
        if image_id is not None:
            annotated[image_id] += 1
            if image_ids is not None and image_id not in image_ids:
                found.add(f"$.annotations[{index}].image_id", f"image_id {image_id} is not the id of any image")
        category_id = _int_id(annotation, "category_id")
        if categories is not None and category_id is not None and category_id not in categories:
            found.add(f"$.annotations[{index}].category_id", f"category_id {category_id} is not the id of any category")
    if images is not None and not kind.is_test:
        for index, image in enumerate(images):
            image_id = _int_id(image)
            if image_id is not None and image_id not in annotated:
                found.add(f"$.images[{index}]", f"image {image_id} has no annotation; every train/val image needs one")
