from sqlalchemy import text

from compliance.core.stores.sql import engine_from_url


def test_s3_roundtrip(s3):
    s3.create_bucket(Bucket="bucket-one")
    s3.put_object(Bucket="bucket-one", Key="k", Body=b"x")
    assert s3.get_object(Bucket="bucket-one", Key="k")["Body"].read() == b"x"


def test_db_backends(db_url):
    eng = engine_from_url(db_url)
    with eng.begin() as conn:
        assert conn.execute(text("select 1")).scalar() == 1
    eng.dispose()
